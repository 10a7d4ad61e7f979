# placeholder: filled by the analysis stage
