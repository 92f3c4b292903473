"""intentflow.sinks"""
