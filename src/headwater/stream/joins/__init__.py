"""Stream joins: with a table at event time (`temporal`), with another stream (`interval`)."""
