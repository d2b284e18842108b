"""Data: index readers -> prepare (videos -> TFRecords) -> clip pipeline; synthetic sets."""
