"""Final training of one plan, its export, and the evaluation of an export."""
