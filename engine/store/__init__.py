"""All of Kiln's SQL. ``dialects.open_store`` picks the store for a database (``postgres`` or
``sqlite``, both ``base.Store``); the ``*_txn`` functions of the noun modules take a connection,
never commit, and reach what each database spells its own way through ``dialects.statements``.
"""
