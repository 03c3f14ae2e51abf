//! ResNet, PreAct-ResNet and ViT with dense outputs and timm tensor names, on candle.
