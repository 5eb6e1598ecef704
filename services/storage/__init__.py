"""Where image bytes live: originals (content-addressed) and thumbnails."""
