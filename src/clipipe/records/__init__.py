"""clipipe.records"""
