"""Link impairment: delay, jitter, loss and rate limits on the underlay link of a node or external."""
