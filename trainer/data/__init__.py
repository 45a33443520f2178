"""Where the data is: the position inside an epoch and its RNG, the distributed sampler, and the re-dealing
of an epoch's rest over another number of processes."""
