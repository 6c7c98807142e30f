"""The core every stage builds on and that imports no stage: errors, canonical classes, the table
registry and schemas, table I/O, validation suites, settings, stage contracts, group splits and the
shard reader."""
