"""intentflow.online_models"""
