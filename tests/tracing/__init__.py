"""Tracing tests: spans exported to a real OTLP receiver, and no cost when tracing is off."""
