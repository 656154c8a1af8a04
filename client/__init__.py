"""conveyor.client"""
