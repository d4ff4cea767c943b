"""igrec local stack: Kafka (KRaft) and Neo4j Community resolved from Maven Central and run on 127.0.0.1."""
