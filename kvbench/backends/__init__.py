"""Backends: the engines kvbench can drive, behind one small interface (`base.Backend`)."""
