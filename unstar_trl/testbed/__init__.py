"""The test bed: the embedded fictitious world, the TOFU world and the small knowledge models trained on them, so that
everything runs offline on a CPU. The method never imports it: a world hands its pools, rationales and skill prompts
in through its records and its model folder's prompts file."""
