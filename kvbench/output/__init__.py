"""Terminal presentation: hyperfine-style aligned lines and progress display. Measurement code
never imports from here; commands format their results with it."""
