"""The study dashboard: one self-contained HTML page (plotly.js inlined, opens offline)."""
