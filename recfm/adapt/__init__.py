"""Adapting a trained run: new titles (:mod:`recfm.adapt.new_items`) and incremental
training on recent events (:mod:`recfm.adapt.incremental`)."""
