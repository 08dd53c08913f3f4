"""Reading raw and writing product files (the boundary between files and arrays)."""
