"""The I/O side of the venues: ccxt.pro clients configured and guarded from each venue's
`streams.core.venues.contract.Venue`, with no per-venue code."""
