"""Presentation: console tables, matplotlib plots and the offline HTML report; they only
read a `Run`.
"""
