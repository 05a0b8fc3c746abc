"""The fiscal domain: session rules, fiscal signs, device registry and state, the journal."""
