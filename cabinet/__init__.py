"""The cabinet: the taxpayers' web front and the public receipt check (`ofd web`)."""
