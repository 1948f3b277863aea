"""clipipe.spec"""
