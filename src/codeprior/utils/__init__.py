"""Small shared helpers: atomic file writes, hashing, seeding, progress bars."""
