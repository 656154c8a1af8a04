"""conveyor.broker"""
