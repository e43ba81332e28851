"""The roof: the `entasis` command line and the composition roots it starts (`up`, feeds,
connectors, operator commands). Nothing below this package imports it."""
