"""Passes over a mined run that write more into its store: patches and deconvolutions
(visualize), activation traces, unit importance by ablation.
"""
