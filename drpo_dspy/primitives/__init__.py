"""The shared vocabulary of the lower rooms: conversation turns and queries, and the search's events."""
