"""Pure-Python helpers shared by every layer (no torch): files written atomically, one-line errors."""
