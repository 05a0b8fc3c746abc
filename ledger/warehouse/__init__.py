"""The warehouse: ClickHouse (a server, or chDB in the data directory) fed by the journal.

`schema.sql` is the one DDL both run; `backends` talks to either; `rows` decodes journal records
into document rows; `loader` moves them in batches, exactly once by document identity; `service`
owns an embedded chDB directory and answers analysts' queries over local HTTP; `reports` holds
the named reports of an operator's cabinet.
"""
