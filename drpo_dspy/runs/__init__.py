"""Run directories, secrets redaction, input validation, query files, the search report."""
