"""Quality benchmark: Headwater's contract checks vs Great Expectations and Soda Core."""
