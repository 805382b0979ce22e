"""What the daemon has done: counts, histograms, the stats schema; imports util, wire."""
