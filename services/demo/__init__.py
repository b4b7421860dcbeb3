"""`recap demo`: the whole record -> train -> deploy loop on simulated arms, through the real
processes and the public API, as a lab would run it."""
