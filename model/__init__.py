"""igrec offline ML: datasets, session graphs (numpy), networks, training, metrics. No Kafka here."""
