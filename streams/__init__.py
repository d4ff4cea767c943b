"""igrec I/O: the faust worker, typed records, the Neo4j sink, replay, settings and the CLI."""
