"""clipipe.wire"""
