"""File readers and writers matching nanoBragg's formats (SMV, HKL, Fdump, PGM, ...)."""
