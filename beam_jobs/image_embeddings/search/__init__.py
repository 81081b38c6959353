"""The query side: a day's neighbours index, and search over the days' files or published stores."""
