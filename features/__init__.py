"""intentflow.features"""
