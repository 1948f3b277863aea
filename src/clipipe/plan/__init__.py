"""clipipe.plan"""
