"""Developer tools for nbnumba: trace diffing, sincg precision sweeps, comparisons."""
