"""intentflow.dataflows"""
