"""Logging and metrics: the console setup (``console``), the loss-curve plots, what ``self.log`` collects and
where its values are published."""
