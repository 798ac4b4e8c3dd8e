"""Labeling: batches of sampled frames become label versions. `service.LabelingService` is the
interface; `label_studio` (on site), `ground_truth` (AWS) and `replay` (demo and tests) implement
it. What is decided here is shared and knows no backend: pre-labels (`prelabels`) and turning a
labeler's answers into label rows (`rows`)."""
