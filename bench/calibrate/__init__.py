"""How often the gate and compare raise false alarms, and what they catch: measured, never assumed."""
