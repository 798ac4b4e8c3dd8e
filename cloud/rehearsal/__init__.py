"""The closed loop, rehearsed on one machine (`edge-inspect loop`): a line changes, the device
notices, the loop labels, retrains, gates, registers, deploys, and the model recovers.

Every step is the product's own, configured as a plant would configure it on site (the daemon,
`cloud serve`'s labeling loop with the replay labeler, the retraining pipeline and its gate, the
MLflow registry, the local deployer and its canary judge); this package only writes those
configurations, watches the messages, decides when a turn is over, and reports.

- `settings`: what a rehearsal is decided by.
- `line`: the line's photos (the production model's training photos) and the held-out ones.
- `plan`: the daemon's and the cloud's configurations for a rehearsal folder.
- `timeline`: every message the line sends, as the report's time series.
- `turns`: the loop itself, a turn at a time.
- `heldout`: mAP of each model on held-out photos, drifted and not.
- `report`: report.json, report.md, report.png.
"""
