"""Pure helpers with no I/O, shared by every layer: the codec, argument checks, ids,
failure records, cron maths, token and signature helpers, a resettable signal."""
