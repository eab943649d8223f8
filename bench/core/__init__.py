"""What every part of bench shares: records and their one serializer, kinds, cases, strategies, the environment."""
