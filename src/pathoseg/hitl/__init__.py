"""The human-in-the-loop study: a simulated pathologist, label strategies, selection, and the
study itself (in process, or through the app)."""

# The study's protocol trains its first model at half scale (the app's first model, without
# --model, uses pathoseg train's scale): kept here, light to import for the command line.
STUDY_SCALE = 0.5
