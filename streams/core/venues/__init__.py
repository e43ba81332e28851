"""One module per venue (`binance_spot`, `binance_usdm`, `binance_coinm`, `coinbase`, `kraken`,
`simulated`) behind one contract (`contract.Venue`), all in one registry (`registry`); the wire parsers
(`binance` for the recorded and raw Binance messages, `ccxt_events` for ccxt's structures)."""
